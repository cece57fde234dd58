"""The `tag` example plugin in Python (componentize-py): the same behaviour as the Rust one
in plugins/examples/tag and the JavaScript one in plugins/js/tag.

Adds a configured header to every message, and scores messages whose subject contains one of
the configured words.

    [pipeline.step.config]
    header = "X-Processed-By"
    value = "sluice"
    words = { "free money" = 6.0, "winner" = 3.0 }
"""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Outcome, Symbol, Edit_AddHeader, Header, Stage, Verdict_Continue,
)


def _cont():
    return Outcome(verdict=Verdict_Continue(), symbols=[], edits=[])


class Filter(exports.Filter):
    def stages(self):
        return [Stage.DATA]

    def configure(self, config: str) -> None:
        c = json.loads(config)
        unknown = set(c) - {"header", "value", "words"}
        if unknown:
            raise Err(f"unknown field `{sorted(unknown)[0]}`")
        header = c.get("header")
        if not isinstance(header, str) or not header or ":" in header or " " in header:
            raise Err(f"`header` must be a header name, not `{header}`")
        if not isinstance(c.get("value"), str):
            raise Err("`value` (a string) is required")
        words = c.get("words", {})
        if not isinstance(words, dict) or not all(
            isinstance(v, (int, float)) for v in words.values()
        ):
            raise Err("`words` must map words to scores")

    def on_connect(self, session):
        return _cont()

    def on_ehlo(self, session):
        return _cont()

    def on_mail(self, session, envelope):
        return _cont()

    def on_rcpt(self, session, envelope, recipient):
        return _cont()

    def on_data(self, message):
        c = json.loads(host.config())
        subject = " ".join(message.header("Subject")).lower()
        edits = [Edit_AddHeader(Header(name=c["header"], value=c["value"]))]
        symbols = [
            Symbol(
                name="SUBJECT_" + w.replace(" ", "_").upper(),
                score=float(s),
                description=None,
            )
            for w, s in sorted(c.get("words", {}).items())
            if w.lower() in subject
        ]
        return Outcome(verdict=Verdict_Continue(), symbols=symbols, edits=edits)

    def on_queued(self, message):
        return _cont()

    def on_delivery(self, message, recipients):
        return _cont()

    def on_render(self, message, recipient):
        return []

    def on_event(self, event):
        return _cont()
