"""Evaluation and metrics.

`evaluation` (the test protocol on Samples: answers, captions, written images), `writer` (EvalWriter: what
`unizoo test|predict` write), `gather` (records of several processes on rank 0), `validation`
(generation-based scores on val), `metrics` (model-agnostic generation metrics).
"""
