"""cpstyle's benchmarks: bench/run.py (python -m bench), bench/bench_cpu.py, the
PyTorch baseline bench/torch_reference.py, bench/plot.py, the conv tile tuner
bench/tune_conv.py; results in bench/results/."""
import cpstyle  # noqa: F401,E402  first: it sets OpenBLAS's thread timeout before NumPy loads
