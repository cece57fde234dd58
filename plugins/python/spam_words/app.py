"""A Sluice plugin in Python (componentize-py): scores messages by words in the subject
and text, and tags every message it sees.

Config (JSON from the policy step's `config` table):
    {"words": {"lottery": 4.0, "prize": 2.0}, "tag": "X-Checked-By"}
"""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Outcome, Symbol, Edit_AddHeader, Header, Stage, Verdict_Continue,
)


def _config():
    return json.loads(host.config())


class Filter(exports.Filter):
    def stages(self):
        return [Stage.DATA]

    def configure(self, config: str) -> None:
        c = json.loads(config)
        words = c.get("words", {})
        if not isinstance(words, dict) or not all(isinstance(v, (int, float)) for v in words.values()):
            raise Err("`words` must map words to scores")
        if not c.get("tag"):
            raise Err("`tag` (a header name) is required")

    def _cont(self):
        return Outcome(verdict=Verdict_Continue(), symbols=[], edits=[])

    def on_connect(self, session):
        return self._cont()

    def on_ehlo(self, session):
        return self._cont()

    def on_mail(self, session, envelope):
        return self._cont()

    def on_rcpt(self, session, envelope, recipient):
        return self._cont()

    def on_data(self, message):
        c = _config()
        text = " ".join(message.header("Subject") + message.text_parts()).lower()
        symbols = [
            Symbol(name="PY_WORD_" + w.upper(), score=float(s), description=None)
            for w, s in sorted(c.get("words", {}).items())
            if w.lower() in text
        ]
        edits = [Edit_AddHeader(Header(name=c["tag"], value="python"))]
        return Outcome(verdict=Verdict_Continue(), symbols=symbols, edits=edits)

    def on_queued(self, message):
        return self._cont()

    def on_delivery(self, message, recipients):
        return self._cont()

    def on_render(self, message, recipient):
        return []

    def on_event(self, event):
        return self._cont()
