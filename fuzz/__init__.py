"""Coverage-guided fuzzing (atheris) of every parser that takes bytes or text from outside.

One harness per parser family, ``fuzz/fuzz_<name>.py``, each with a pure ``check(data)`` that
raises only on a bug (an exception other than the parser's documented error, or two
implementations that disagree). ``python fuzz/run.py`` runs them under atheris and keeps the
corpus in ``fuzz/corpus/<name>/``; ``tests/fuzz/test_corpus_replay.py`` replays that corpus
through ``check`` without atheris. docs/fuzzing.md says more.
"""
