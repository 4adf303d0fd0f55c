"""cpstyle's benchmarks: bench/run.py (python -m bench), bench/bench_cpu.py, the
PyTorch baseline bench/torch_reference.py, bench/plot.py; results in bench/results/."""
