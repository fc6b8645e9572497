"""Benchmarks: ``imrs bench`` (index speed/memory, retrieval quality, text search, improvements).

``runner.run_bench(BenchConfig(...))`` does the work, ``report.latest_run(home)`` tells the app
where the latest tables and plots are. Heavy imports (torch, FAISS, matplotlib) happen inside the
functions that need them.
"""
