//! The trainer: NB-LR (logistic regression on features scaled by their naive Bayes
//! log-count ratio, Wang & Manning 2012) over hashed features, fitted with AdaGrad in a
//! fixed, seeded order (the same corpus always gives the same model), and the measures
//! cross-validation reports.

use crate::features::{Features, hash};
use crate::model::{Model, ModelHeader, buckets, values};

/// A message's buckets, what each counts for, and its label.
type Row = (Vec<u32>, Vec<f32>, bool);

/// Training settings; the defaults are the ones `sluice spam cv` measured (bench/RESULTS.md).
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// log2 of the number of weights.
    pub bits: u32,
    pub epochs: u32,
    pub rate: f32,
    /// L2 penalty on the weights a message touches.
    pub l2: f32,
    /// Weight of a ham message's error relative to spam's: above 1 trades recall for fewer
    /// false positives.
    pub ham_weight: f32,
    pub seed: u64,
    /// How many fits (each in its own order) are averaged into the model.
    pub orders: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            bits: 20,
            epochs: 30,
            rate: 1.0,
            l2: 3e-6,
            ham_weight: 6.0,
            seed: 0x5eed,
            orders: 4,
        }
    }
}

/// Fits a model on labelled messages (`true` = spam).
///
/// Stochastic gradient descent depends on the order it visits the messages: one order's
/// model can score a message several points off another's. So `p.orders` fits run, each in
/// its own seeded order and each averaging its weights over the second half of its epochs,
/// and the model is the mean of their weights (a linear model: scoring costs the same).
pub fn train(examples: &[(&Features, bool)], p: &Params) -> Model {
    let header = ModelHeader {
        bits: p.bits,
        bias: 0.0,
        checksum: 0,
        trained_on: 0,
    };
    let rows: Vec<Row> = examples
        .iter()
        .map(|(f, spam)| {
            let (b, syms) = buckets(&header, f);
            let v = values(&b, &syms);
            (b, v, *spam)
        })
        .collect();
    let nbr = nb_ratios(&rows, 1usize << p.bits);
    let orders = p.orders.max(1);
    let fits: Vec<(Vec<f32>, f32)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..orders)
            .map(|k| {
                let (rows, nbr) = (&rows, &nbr);
                let seed = p
                    .seed
                    .wrapping_add(u64::from(k).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                s.spawn(move || fit(rows, nbr, p, seed))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("training panicked"))
            .collect()
    });
    let mut w = vec![0f32; nbr.len()];
    let mut bias = 0f32;
    for (fw, fb) in &fits {
        for (w, f) in w.iter_mut().zip(fw) {
            *w += f / orders as f32;
        }
        bias += fb / orders as f32;
    }
    for (w, r) in w.iter_mut().zip(&nbr) {
        *w *= r;
    }
    Model {
        bits: p.bits,
        bias,
        trained_on: rows.len() as u32,
        weights: w,
    }
}

/// Naive Bayes log-count ratios per bucket (presence counts, add-one smoothing): the
/// regression learns on features worth `r`, the NB-LR of Wang and Manning (2012).
fn nb_ratios(rows: &[Row], n: usize) -> Vec<f32> {
    let (mut cs, mut ch) = (vec![0u32; n], vec![0u32; n]);
    let spam_n = rows.iter().filter(|r| r.2).count() as f32;
    let ham_n = rows.len() as f32 - spam_n;
    for (b, _, spam) in rows {
        let c = if *spam { &mut cs } else { &mut ch };
        for &i in b {
            c[i as usize] += 1;
        }
    }
    cs.iter()
        .zip(&ch)
        .map(|(&s, &h)| {
            (((s as f32 + 1.0) / (spam_n + 2.0)) / ((h as f32 + 1.0) / (ham_n + 2.0))).ln()
        })
        .collect()
}

/// One AdaGrad fit in the order `seed` gives; returns the weights (before the NB ratios
/// are folded in) and bias, averaged over the second half of the epochs.
fn fit(rows: &[Row], nbr: &[f32], p: &Params, seed: u64) -> (Vec<f32>, f32) {
    let n = nbr.len();
    let mut w = vec![0f32; n];
    let mut g2 = vec![0f32; n];
    let (mut bias, mut bias_g2) = (0f32, 0f32);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut rng = seed | 1;
    let mut sum = vec![0f32; n];
    let (mut sum_bias, mut averaged) = (0f32, 0f32);
    for epoch in 0..p.epochs {
        for i in (1..order.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        for &r in &order {
            let (b, v, spam) = &rows[r];
            let z = bias
                + b.iter()
                    .zip(v)
                    .map(|(&i, &s)| s * w[i as usize] * nbr[i as usize])
                    .sum::<f32>();
            let p_spam = 1.0 / (1.0 + (-z).exp());
            let (y, weight) = if *spam {
                (1.0, 1.0)
            } else {
                (0.0, p.ham_weight)
            };
            let g = (p_spam - y) * weight;
            for (&i, &s) in b.iter().zip(v) {
                let i = i as usize;
                let gi = g * s * nbr[i] + p.l2 * w[i];
                g2[i] += gi * gi;
                w[i] -= p.rate * gi / (g2[i].sqrt() + 1e-6);
            }
            bias_g2 += g * g;
            bias -= p.rate * g / (bias_g2.sqrt() + 1e-6);
        }
        if epoch >= p.epochs / 2 {
            for (s, w) in sum.iter_mut().zip(&w) {
                *s += w;
            }
            sum_bias += bias;
            averaged += 1.0;
        }
    }
    for s in &mut sum {
        *s /= averaged;
    }
    (sum, sum_bias / averaged)
}

/// A key that is the same for copies of one message (normalised body text and subject), so
/// that cross-validation keeps duplicates in one fold.
pub fn duplicate_key(subject: &str, body: &str) -> u64 {
    let norm: String = body
        .split_whitespace()
        .take(400)
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    if norm.len() < 40 {
        // Too little text to call two messages copies: the subject decides too.
        return hash("dup", &format!("{subject}\n{norm}"));
    }
    hash("dup", &norm)
}

/// Assigns each message to one of `k` folds: messages sharing a key go together, each
/// class is spread evenly (groups ordered by a hash of their key, then dealt round-robin).
pub fn folds(keys: &[u64], labels: &[bool], k: usize) -> Vec<usize> {
    use std::collections::{BTreeMap, HashMap};
    let mut class_of: HashMap<u64, bool> = HashMap::new();
    let mut groups: BTreeMap<(bool, u64), Vec<usize>> = BTreeMap::new();
    for (i, (&key, &spam)) in keys.iter().zip(labels).enumerate() {
        // A group's class is that of its first member (copies share a label in practice).
        let class = *class_of.entry(key).or_insert(spam);
        groups
            .entry((class, hash("fold", &key.to_string())))
            .or_default()
            .push(i);
    }
    let mut out = vec![0; keys.len()];
    let mut next = [0usize; 2];
    for ((class, _), members) in groups {
        let f = next[usize::from(class)] % k;
        next[usize::from(class)] += 1;
        for m in members {
            out[m] = f;
        }
    }
    out
}

/// Area under the ROC curve (ties count half).
pub fn auc(scored: &[(f64, bool)]) -> f64 {
    let mut v: Vec<(f64, bool)> = scored.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = v.iter().filter(|x| x.1).count() as f64;
    let neg = v.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    // Sum of the ranks of spam messages, ties given their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0;
        rank_sum += avg * v[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Spam recall and ham false-positive rate at a threshold (score ≥ threshold is spam).
pub fn rates(scored: &[(f64, bool)], threshold: f64) -> (f64, f64) {
    let spam = scored.iter().filter(|x| x.1).count().max(1) as f64;
    let ham = scored.iter().filter(|x| !x.1).count().max(1) as f64;
    let caught = scored.iter().filter(|x| x.1 && x.0 >= threshold).count() as f64;
    let fp = scored.iter().filter(|x| !x.1 && x.0 >= threshold).count() as f64;
    (caught / spam, fp / ham)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::hash;

    fn f(tokens: &[&str]) -> Features {
        let mut hashes: Vec<u64> = tokens.iter().map(|t| hash("b", t)).collect();
        hashes.sort_unstable();
        Features {
            hashes,
            symbols: vec![],
        }
    }

    #[test]
    fn it_learns_a_separable_set_deterministically() {
        let spam = [f(&["cash", "now", "free"]), f(&["free", "offer", "cash"])];
        let ham = [
            f(&["meeting", "notes", "now"]),
            f(&["patch", "review", "notes"]),
        ];
        let ex: Vec<(&Features, bool)> = spam
            .iter()
            .map(|x| (x, true))
            .chain(ham.iter().map(|x| (x, false)))
            .collect();
        let p = Params {
            bits: 12,
            ..Params::default()
        };
        let m = train(&ex, &p);
        assert!(m.score(&f(&["free", "cash"])).score > 5.0);
        assert!(m.score(&f(&["notes", "review"])).score < 5.0);
        assert_eq!(m.to_bytes(), train(&ex, &p).to_bytes());
    }

    #[test]
    fn auc_and_rates() {
        let s = [(1.0, false), (2.0, false), (3.0, true), (4.0, true)];
        assert_eq!(auc(&s), 1.0);
        let s2 = [(1.0, true), (1.0, false)];
        assert_eq!(auc(&s2), 0.5);
        assert_eq!(rates(&s, 2.5), (1.0, 0.0));
        assert_eq!(rates(&s, 1.5), (1.0, 0.5));
    }

    #[test]
    fn duplicates_share_a_fold_and_classes_spread() {
        let keys = [1, 2, 1, 3, 4, 5, 6, 7];
        let labels = [true, true, true, true, false, false, false, false];
        let fo = folds(&keys, &labels, 2);
        assert_eq!(fo[0], fo[2]);
        let spam_folds: Vec<_> = (0..4).map(|i| fo[i]).collect();
        assert!(spam_folds.contains(&0) && spam_folds.contains(&1));
    }
}
