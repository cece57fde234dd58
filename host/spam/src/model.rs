//! The model file: a 32-byte header, then `2^bits` little-endian `f32` weights, one per
//! hash bucket. A message's score is `bias + Σ weight(bucket(f)) · scale` over its features,
//! where `scale = 1/√n` for `n` features: the log-odds that it is spam.
//!
//! ```text
//! 0   8  magic "SLSPAM01"
//! 8   4  bits (u32, 10..=26)
//! 12  4  bias (f32)
//! 16  8  FNV-1a 64 of the weight bytes (damage check)
//! 24  4  messages the model was trained on (u32)
//! 28  4  features version (u32): the model's weights mean something only for the
//!        features it was trained on (`features::VERSION`)
//! ```

use crate::features::Features;

pub const MAGIC: &[u8; 8] = b"SLSPAM01";
pub const HEADER_LEN: usize = 32;

/// Scores are log-odds moved so that even odds sit at this value: like SpamAssassin, 5 is
/// the default line between ham and spam.
pub const SCORE_OFFSET: f64 = 5.0;

#[derive(Debug, PartialEq, Eq)]
pub enum ModelError {
    /// Not a model file (wrong magic).
    NotAModel,
    /// The header names an impossible size.
    BadBits(u32),
    /// The file is shorter or longer than its header says.
    Size { expected: u64, actual: u64 },
    /// The weights do not match the header's checksum.
    Checksum,
    /// Trained on other features than this code computes.
    Version { model: u32, code: u32 },
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelError::NotAModel => write!(f, "not a Sluice spam model (bad magic)"),
            ModelError::BadBits(b) => write!(f, "damaged model: {b} hash bits"),
            ModelError::Size { expected, actual } => write!(
                f,
                "damaged model: {actual} bytes where its header says {expected}"
            ),
            ModelError::Checksum => write!(f, "damaged model: the weights fail their checksum"),
            ModelError::Version { model, code } => write!(
                f,
                "model trained on features version {model}, this plugin computes version {code}: retrain it with `sluice spam train`"
            ),
        }
    }
}

impl std::error::Error for ModelError {}

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelHeader {
    pub bits: u32,
    pub bias: f32,
    pub checksum: u64,
    pub trained_on: u32,
}

impl ModelHeader {
    pub fn parse(h: &[u8]) -> Result<ModelHeader, ModelError> {
        if h.len() < HEADER_LEN || &h[..8] != MAGIC {
            return Err(ModelError::NotAModel);
        }
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let bits = u32_at(8);
        if !(10..=26).contains(&bits) {
            return Err(ModelError::BadBits(bits));
        }
        let version = u32_at(28);
        if version != crate::features::VERSION {
            return Err(ModelError::Version {
                model: version,
                code: crate::features::VERSION,
            });
        }
        Ok(ModelHeader {
            bits,
            bias: f32::from_le_bytes(h[12..16].try_into().expect("4 bytes")),
            checksum: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
            trained_on: u32_at(24),
        })
    }

    /// The file size this header implies.
    pub fn file_len(&self) -> u64 {
        HEADER_LEN as u64 + 4 * (1u64 << self.bits)
    }

    pub fn bucket(&self, hash: u64) -> u32 {
        (hash >> (64 - self.bits)) as u32
    }

    /// The byte offset of a bucket's weight in the file.
    pub fn offset(&self, bucket: u32) -> u64 {
        HEADER_LEN as u64 + 4 * u64::from(bucket)
    }
}

/// A running FNV-1a 64 checksum over the weight bytes, fed in any chunking.
#[derive(Debug, Clone, Copy)]
pub struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The outcome of scoring one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// `SCORE_OFFSET` + log-odds of spam.
    pub score: f64,
    /// The learned contribution of each heuristic that fired (name, score part).
    pub symbols: Vec<(&'static str, f64)>,
}

/// The buckets of a message's features, deduplicated (two features may share one), with
/// each heuristic's bucket.
pub fn buckets(header: &ModelHeader, f: &Features) -> (Vec<u32>, Vec<(&'static str, u32)>) {
    let mut b: Vec<u32> = f.hashes.iter().map(|&h| header.bucket(h)).collect();
    b.sort_unstable();
    b.dedup();
    let syms = f
        .symbols
        .iter()
        .map(|&s| (s, header.bucket(crate::features::hash("sym", s))))
        .collect();
    (b, syms)
}

/// Scores a message from the weights of its buckets (`weights[i]` belongs to `buckets[i]`).
pub fn score(
    header: &ModelHeader,
    buckets: &[u32],
    weights: &[f32],
    symbols: &[(&'static str, u32)],
) -> Scored {
    let values = values(buckets, symbols);
    let sum: f64 = weights
        .iter()
        .zip(&values)
        .map(|(&w, &v)| f64::from(w) * f64::from(v))
        .sum();
    let z = f64::from(header.bias) + sum;
    let symbols = symbols
        .iter()
        .filter_map(|&(name, b)| {
            let i = buckets.binary_search(&b).ok()?;
            Some((name, f64::from(weights[i]) * f64::from(values[i])))
        })
        .collect();
    Scored {
        score: SCORE_OFFSET + z,
        symbols,
    }
}

/// What a heuristic's bucket counts for (measured: 0.15 to 0.6 all beat scaling heuristics
/// like tokens, whose weights then stayed too small to matter; bench/RESULTS.md).
pub const SYMBOL_VALUE: f32 = 0.15;

/// What each bucket's weight counts for in a message: a heuristic's [`SYMBOL_VALUE`], a
/// token's [`scale`] (so that a heuristic weighs the same in a long message as in a short
/// one, while the many tokens of a long message do not add up to more than a short one's).
/// `buckets` are sorted, as [`buckets`] returns them.
pub fn values(buckets: &[u32], symbols: &[(&'static str, u32)]) -> Vec<f32> {
    let mut v = vec![scale(buckets.len()) as f32; buckets.len()];
    for (_, b) in symbols {
        if let Ok(i) = buckets.binary_search(b) {
            v[i] = SYMBOL_VALUE;
        }
    }
    v
}

/// The per-feature scale for a message with `n` features: long messages do not score
/// higher just for having more words.
pub fn scale(n: usize) -> f64 {
    1.0 / (n.max(1) as f64).sqrt()
}

/// A model held in memory (trainer, `sluice spam cv`, tests).
#[derive(Debug, Clone)]
pub struct Model {
    pub bits: u32,
    pub bias: f32,
    pub trained_on: u32,
    pub weights: Vec<f32>,
}

impl Model {
    pub fn header(&self) -> ModelHeader {
        let mut c = Checksum::default();
        for w in &self.weights {
            c.update(&w.to_le_bytes());
        }
        ModelHeader {
            bits: self.bits,
            bias: self.bias,
            checksum: c.value(),
            trained_on: self.trained_on,
        }
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let h = self.header();
        let mut out = Vec::with_capacity(h.file_len() as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&h.bits.to_le_bytes());
        out.extend_from_slice(&h.bias.to_le_bytes());
        out.extend_from_slice(&h.checksum.to_le_bytes());
        out.extend_from_slice(&h.trained_on.to_le_bytes());
        out.extend_from_slice(&crate::features::VERSION.to_le_bytes());
        for w in &self.weights {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Reads and checks a model file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        let h = ModelHeader::parse(bytes)?;
        if bytes.len() as u64 != h.file_len() {
            return Err(ModelError::Size {
                expected: h.file_len(),
                actual: bytes.len() as u64,
            });
        }
        let body = &bytes[HEADER_LEN..];
        let mut c = Checksum::default();
        c.update(body);
        if c.value() != h.checksum {
            return Err(ModelError::Checksum);
        }
        Ok(Model {
            bits: h.bits,
            bias: h.bias,
            trained_on: h.trained_on,
            weights: body
                .chunks_exact(4)
                .map(|w| f32::from_le_bytes(w.try_into().expect("4 bytes")))
                .collect(),
        })
    }

    pub fn score(&self, f: &Features) -> Scored {
        let h = self.header_fast();
        let (b, syms) = buckets(&h, f);
        let w: Vec<f32> = b.iter().map(|&i| self.weights[i as usize]).collect();
        score(&h, &b, &w, &syms)
    }

    /// The header without the checksum (scoring does not need it).
    fn header_fast(&self) -> ModelHeader {
        ModelHeader {
            bits: self.bits,
            bias: self.bias,
            checksum: 0,
            trained_on: self.trained_on,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model {
            bits: 10,
            bias: -0.5,
            trained_on: 3,
            weights: (0..1024).map(|i| (i as f32) / 1024.0 - 0.5).collect(),
        }
    }

    #[test]
    fn a_model_round_trips_through_its_file() {
        let m = model();
        let back = Model::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!(back.weights, m.weights);
        assert_eq!(back.bias, m.bias);
        assert_eq!(back.trained_on, 3);
    }

    #[test]
    fn damage_is_detected() {
        let bytes = model().to_bytes();
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 100] ^= 1;
        assert_eq!(
            Model::from_bytes(&flipped).unwrap_err(),
            ModelError::Checksum
        );
        assert!(matches!(
            Model::from_bytes(&bytes[..bytes.len() - 4]),
            Err(ModelError::Size { .. })
        ));
        assert_eq!(
            Model::from_bytes(b"hello").unwrap_err(),
            ModelError::NotAModel
        );
        let mut bits = bytes.clone();
        bits[8] = 40;
        assert_eq!(
            Model::from_bytes(&bits).unwrap_err(),
            ModelError::BadBits(40)
        );
    }

    #[test]
    fn scores_add_up() {
        let m = model();
        let f = Features {
            hashes: vec![1 << 60, 3 << 60, crate::features::hash("sym", "X")],
            symbols: vec!["X"],
        };
        let s = m.score(&f);
        let h = m.header();
        let (b, syms) = buckets(&h, &f);
        let sym = syms[0].1;
        // Tokens count for 1/sqrt(n) each, a heuristic for SYMBOL_VALUE.
        let tokens: f64 = b
            .iter()
            .filter(|&&i| i != sym)
            .map(|&i| f64::from(m.weights[i as usize]))
            .sum();
        let heuristic = f64::from(m.weights[sym as usize]) * f64::from(SYMBOL_VALUE);
        let want = SCORE_OFFSET + f64::from(m.bias) + tokens / (b.len() as f64).sqrt() + heuristic;
        assert!((s.score - want).abs() < 1e-6, "{} {want}", s.score);
        assert_eq!(s.symbols.len(), 1);
        assert!((s.symbols[0].1 - heuristic).abs() < 1e-9);
    }
}
