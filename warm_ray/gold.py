"""The gold (control) reward: a fixed scorer that no proxy RM or policy ever trains on.

    gold(x, y) = sentiment(y) + FLUENCY_WEIGHT · fluency(x, y) - REPETITION_WEIGHT · repetition(y)

- sentiment(y): VADER compound sentiment in [-1, 1] (a rule-based lexicon, Hutto & Gilbert 2014),
  deterministic, ~0.05 ms per text. On its own it is 0 for most short neutral texts, so it
  cannot rank them: ties everywhere.
- fluency(x, y): how natural the completion's words are as a continuation of the prompt, under
  a *reference* language model that is neither the policy nor any RM: an interpolated
  absolute-discounting word bigram model (Ney et al. 1994) counted on the whole shipped corpus
  (State of the Union + Moby-Dick, ~20k word types: far more parameters than the tiny RMs'
  featurizer). The mean log-probability per completion word, standardised with constants
  measured once on held-out corpus text and squashed by tanh into (-1, 1). It is continuous, so
  two different completions almost never tie, and it is a *mean*, so it is not monotone in length.
- repetition(y): repeated content words (1 - distinct/total over words of 3+ letters that are
  not stop words) plus the share of repeated word bigrams, in [0, 2].
- an empty completion scores EMPTY_GOLD (the bottom of the fluency range, no sentiment).

Why it is exploitable the way real quality is: the preference pairs are samples of the base
LM, which is fluent and rarely repeats, so the proxies mostly learn "positive words win".
A policy that over-optimises a proxy drifts into strings of positive words, repeated and
disfluent, which the proxy still likes and the gold reward does not: proxy up, gold down,
the over-optimisation curve of Gao et al. (2022).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

_WORD = re.compile(r"[a-z']+")

FLUENCY_WEIGHT = 0.75
REPETITION_WEIGHT = 1.0
EMPTY_GOLD = -FLUENCY_WEIGHT
# absolute discount of the bigram model
_DISCOUNT = 0.75
# standardisation of the mean bigram log-probability, measured by ``_fluency_constants`` on
# sentence halves of the corpus (fixed numbers, so the gold reward never changes with code paths)
_STOP = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been
being it its this that these those there their they them he she his her him we our us you your i me
my not no so than then too very can will would shall should may might must do does did have has had
which who whom what when where why how all any each some such only own same other into over under
upon out up down off about again once here more most""".split())


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


class BigramLM:
    """Interpolated absolute-discounting word bigram LM with an add-one unigram floor.

    P(w | v) = max(c(v, w) - D, 0) / c(v) + D · N₁₊(v ·) / c(v) · P_uni(w)
    P_uni(w) = (c(w) + 1) / (N + V + 1)    (unseen words share the +1 mass)
    """

    def __init__(self, sentences: Sequence[str], discount: float = _DISCOUNT):
        self.discount = discount
        self.unigram: Counter[str] = Counter()
        self.bigram: Counter[tuple[str, str]] = Counter()
        for s in sentences:
            ws = ["<s>", *words(s)]
            self.unigram.update(ws[1:])
            self.bigram.update(zip(ws[:-1], ws[1:]))
        self.context: Counter[str] = Counter()
        self.followers: Counter[str] = Counter()
        for (v, _w), c in self.bigram.items():
            self.context[v] += c
            self.followers[v] += 1
        self.total = sum(self.unigram.values())
        self.vocab = len(self.unigram)

    def p_unigram(self, w: str) -> float:
        return (self.unigram.get(w, 0) + 1) / (self.total + self.vocab + 1)

    def logprob(self, w: str, v: str) -> float:
        cv = self.context.get(v, 0)
        if cv == 0:
            return math.log(self.p_unigram(w))
        c = self.bigram.get((v, w), 0)
        p = max(c - self.discount, 0.0) / cv + self.discount * self.followers[v] / cv * self.p_unigram(w)
        return math.log(p)

    def mean_logprob(self, context: Sequence[str], ws: Sequence[str]) -> float:
        prev = context[-1] if context else "<s>"
        total = 0.0
        for w in ws:
            total += self.logprob(w, prev)
            prev = w
        return total / len(ws)


def _corpus_sentences() -> list[str]:
    out = []
    for name in ("sotu.txt", "moby_dick.txt"):
        text = resources.files("warm_ray").joinpath("corpus", name).read_text(encoding="utf-8")
        out += [line for line in text.splitlines() if line.strip()]
    return out


@lru_cache(maxsize=1)
def reference_lm() -> BigramLM:
    """The gold reward's reference LM (built once per process, ~1 s)."""
    return BigramLM(_corpus_sentences())


@lru_cache(maxsize=1)
def _fluency_constants() -> tuple[float, float]:
    """Mean and SD of the mean log-prob of the second half of held-out corpus sentences given the
    first half, under a bigram LM counted without them (unseen text, like a policy's samples)."""
    sentences = _corpus_sentences()
    lm = BigramLM([s for i, s in enumerate(sentences) if i % 7])
    values = []
    for s in sentences[::7]:
        ws = words(s)
        if len(ws) >= 6:
            half = len(ws) // 2
            values.append(lm.mean_logprob(ws[:half], ws[half:]))
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, sd


def sentiment_lexicon() -> dict[str, float]:
    """The sentiment term's word valences (VADER's lexicon, word -> valence in about [-4, 4])."""
    return _analyzer().lexicon


def sentiment(text: str) -> float:
    return float(_analyzer().polarity_scores(text)["compound"])


def fluency(prompt: str, completion: str) -> float:
    """tanh of the standardised mean bigram log-prob of the completion's words, in (-1, 1)."""
    ws = words(completion)
    if not ws:
        return -1.0
    mean, sd = _fluency_constants()
    return math.tanh((reference_lm().mean_logprob(words(prompt), ws) - mean) / sd)


def repetition(text: str) -> float:
    """Repeated content words (1 - distinct/total) + share of repeated word bigrams, in [0, 2]."""
    ws = words(text)
    content = [w for w in ws if len(w) >= 3 and w not in _STOP]
    rep = 1.0 - len(set(content)) / len(content) if len(content) >= 2 else 0.0
    pairs = list(zip(ws[:-1], ws[1:]))
    rep_pairs = 1.0 - len(set(pairs)) / len(pairs) if len(pairs) >= 2 else 0.0
    return rep + rep_pairs


def gold_reward(completion: str, prompt: str = "") -> float:
    """Gold reward of one completion of ``prompt`` (see the module docstring)."""
    if not words(completion):
        return EMPTY_GOLD
    return (sentiment(completion) + FLUENCY_WEIGHT * fluency(prompt, completion)
            - REPETITION_WEIGHT * repetition(completion))


def gold_rewards(texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
    """Gold rewards of completions (with their prompts, when given: fluency reads the context)."""
    if prompts is None:
        prompts = [""] * len(texts)
    return [gold_reward(t, p) for t, p in zip(texts, prompts)]
