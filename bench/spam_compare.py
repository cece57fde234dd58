#!/usr/bin/env python3
"""Sluice's spam model against SpamAssassin, on the same messages and the same folds.

1. `sluice spam cv` cross-validates Sluice's model on the training groups and writes, per
   message, its fold and out-of-fold score.
2. For each fold, SpamAssassin (Debian `spamassassin`, offline: `-L`, its shipped rules) gets
   a fresh Bayes database trained with `sa-learn` on the other folds, then scores the fold's
   messages (`spamassassin --mbox`, one process per fold; Bayes auto-learning off).
3. Prints recall and false positives at each filter's default threshold (5.0 for both), ROC
   AUC, and SpamAssassin's CPU time per message.

X-Spam-* headers are stripped from every message before learning or scoring.

    python3 bench/spam_compare.py [--corpus DIR] [--folds 5] [--sluice target/release/sluice]

The corpus comes from scripts/spam-corpus.sh (easy-ham-1, hard-ham-1, spam-1).
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT


def auc(scored):
    pos = [s for s, y in scored if y]
    neg = sorted(s for s, y in scored if not y)
    import bisect
    total = 0.0
    for p in pos:
        lo = bisect.bisect_left(neg, p)
        hi = bisect.bisect_right(neg, p)
        total += lo + (hi - lo) / 2
    return total / (len(pos) * len(neg))


def rates(scored, threshold):
    spam = [s for s, y in scored if y]
    ham = [s for s, y in scored if not y]
    caught = sum(1 for s in spam if s >= threshold)
    fp = sum(1 for s in ham if s >= threshold)
    return caught / len(spam), fp, fp / len(ham)


def clean(path):
    """The message without its mbox `From ` line and X-Spam-* headers, LF line ends."""
    raw = open(path, "rb").read().replace(b"\r\n", b"\n")
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    head, sep, body = raw.partition(b"\n\n")
    lines = head.split(b"\n")
    kept = []
    skipping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(b"x-spam-")
        if not skipping:
            kept.append(line)
    return b"\n".join(kept) + sep + body


def write_mbox(paths, dest, tag=False):
    with open(dest, "wb") as out:
        for p in paths:
            m = clean(p)
            if tag:
                m = b"X-Corpus-Path: " + p.encode() + b"\n" + m
            m = re.sub(rb"(?m)^(>*From )", rb">\1", m)
            out.write(b"From corpus@example.com Thu Jan  1 00:00:00 2002\n")
            out.write(m)
            if not m.endswith(b"\n"):
                out.write(b"\n")
            out.write(b"\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=os.environ.get(
        "SLUICE_CORPUS_DIR", os.path.expanduser("~/.cache/sluice/spam-assassin")))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target/release/sluice"))
    args = ap.parse_args()
    c = args.corpus
    work = tempfile.mkdtemp(prefix="spam-compare-")
    scores = os.path.join(work, "sluice.tsv")
    t0 = time.time()
    subprocess.run([args.sluice, "spam", "cv", "--folds", str(args.folds),
                    "--ham", f"{c}/easy-ham-1", "--ham", f"{c}/hard-ham-1",
                    "--spam", f"{c}/spam-1", "--scores", scores], check=True)
    sluice_cv_s = time.time() - t0
    rows = [line.rstrip("\n").split("\t") for line in open(scores)]
    label = {r[0]: r[1] == "spam" for r in rows}
    fold = {r[0]: int(r[2]) for r in rows}
    ours = {r[0]: float(r[3]) for r in rows}
    sa = {}
    sa_cpu = 0.0
    for f in range(args.folds):
        train = [p for p in label if fold[p] != f]
        test = [p for p in label if fold[p] == f]
        db = os.path.join(work, f"bayes{f}")
        os.makedirs(db)
        ham_mbox = os.path.join(work, f"ham{f}.mbox")
        spam_mbox = os.path.join(work, f"spam{f}.mbox")
        write_mbox([p for p in train if not label[p]], ham_mbox)
        write_mbox([p for p in train if label[p]], spam_mbox)
        cf = ["--cf", f"bayes_path {db}/bayes", "--cf", "use_bayes 1",
              "--cf", "bayes_auto_learn 0", "--cf", "bayes_auto_expire 0"]
        for kind, mbox in (("--ham", ham_mbox), ("--spam", spam_mbox)):
            subprocess.run(["sa-learn", "-L", "--dbpath", db, "--mbox", kind, mbox],
                           check=True, stdout=subprocess.DEVNULL)
        test_mbox = os.path.join(work, f"test{f}.mbox")
        write_mbox(test, test_mbox, tag=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(["spamassassin", "-L", "--mbox", *cf],
                             stdin=open(test_mbox, "rb"), capture_output=True, check=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        sa_cpu += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        found = 0
        for msg in re.split(rb"(?m)^From corpus@example\.com .*\n", out):
            path = re.search(rb"(?m)^X-Corpus-Path: (.*)$", msg)
            status = re.search(rb"(?m)^X-Spam-Status: \w+, score=(-?[\d.]+)", msg)
            if path and status:
                sa[path.group(1).decode()] = float(status.group(1))
                found += 1
        print(f"fold {f}: SpamAssassin scored {found} of {len(test)}", file=sys.stderr)
    both = [p for p in label if p in sa]
    print(f"\n{len(both)} messages ({sum(label[p] for p in both)} spam), "
          f"{args.folds} folds (copies kept together)\n")
    print("filter\tthreshold\trecall\tfalse positives\tROC AUC")
    for name, s in (("sluice", ours), ("spamassassin+bayes", sa)):
        scored = [(s[p], label[p]) for p in both]
        r, fp, fpr = rates(scored, 5.0)
        print(f"{name}\t5.0\t{r * 100:.2f}%\t{fp} ({fpr * 100:.2f}%)\t{auc(scored):.4f}")
    print(f"\nSpamAssassin CPU per message: {sa_cpu / len(both) * 1000:.1f} ms "
          f"(spamassassin --mbox, -L, {len(both)} messages)")
    print(f"sluice spam cv (featurise + {args.folds} trainings + scoring, wall): {sluice_cv_s:.1f} s")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
