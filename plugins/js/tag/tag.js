// The `tag` example plugin in JavaScript (componentize-js through jco): the same behaviour
// as the Rust one in plugins/examples/tag and the Python one in plugins/python/tag.
//
// Adds a configured header to every message, and scores messages whose subject contains one
// of the configured words.
//
//   [pipeline.step.config]
//   header = "X-Processed-By"
//   value = "sluice"
//   words = { "free money" = 6.0, "winner" = 3.0 }

import { config } from 'sluice:plugin/host@0.2.0';

const cont = () => ({ verdict: { tag: 'continue' }, symbols: [], edits: [] });

function check(c) {
  for (const key of Object.keys(c)) {
    if (!['header', 'value', 'words'].includes(key)) {
      throw `unknown field \`${key}\``;
    }
  }
  if (typeof c.header !== 'string' || c.header === '' || /[: ]/.test(c.header)) {
    throw `\`header\` must be a header name, not \`${c.header}\``;
  }
  if (typeof c.value !== 'string') {
    throw '`value` (a string) is required';
  }
  for (const score of Object.values(c.words ?? {})) {
    if (typeof score !== 'number') {
      throw '`words` must map words to scores';
    }
  }
}

export const filter = {
  stages() {
    return ['data'];
  },

  // An error result is a thrown string (a thrown Error object would trap).
  configure(text) {
    let c;
    try {
      c = JSON.parse(text);
    } catch (e) {
      throw `bad config: ${e}`;
    }
    check(c);
  },

  onConnect(_session) {
    return cont();
  },
  onEhlo(_session) {
    return cont();
  },
  onMail(_session, _envelope) {
    return cont();
  },
  onRcpt(_session, _envelope, _recipient) {
    return cont();
  },

  onData(message) {
    const c = JSON.parse(config());
    const subject = message.header('Subject').join(' ').toLowerCase();
    const out = cont();
    out.edits.push({ tag: 'add-header', val: { name: c.header, value: c.value } });
    for (const word of Object.keys(c.words ?? {}).sort()) {
      if (subject.includes(word.toLowerCase())) {
        out.symbols.push({
          name: 'SUBJECT_' + word.replaceAll(' ', '_').toUpperCase(),
          score: c.words[word],
          description: undefined,
        });
      }
    }
    return out;
  },

  onQueued(_message) {
    return cont();
  },
  onDelivery(_message, _recipients) {
    return cont();
  },
  onRender(_message, _recipient) {
    return [];
  },
  onEvent(_event) {
    return cont();
  },
};
