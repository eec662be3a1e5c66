"""Benchmarking: every method under one protocol, and the measurements behind the README's figures.

- :mod:`.suites`: the suites, declared (data, tasks, methods, budget, a paper's claimed ordering);
- :mod:`.protocol`: the driver behind ``synthmed benchmark`` (train, translate, score, per task);
- :mod:`.scoring`: the one scoring path (image metrics, lesion, max-normalised, FID, summaries, ranking);
- :mod:`.layout`: where a task's runs, outputs, masks and logs live;
- :mod:`.runner`: child processes measured one way (wall time, own peak RSS), also for ``benchmarks/`` scripts;
- :mod:`.results`: ``benchmark.json``/``.csv`` written and read back checked, strict JSON for scripts;
- :mod:`.report`: the self-contained HTML report of a benchmark folder;
- :mod:`.downstream`: downstream evaluation of generators (segmentation trained on synthetic pairs).
"""
