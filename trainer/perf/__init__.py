"""One performance model: model shapes, FLOPs, communication traffic, and the placement plan built on them.

Pure arithmetic on shapes (no weights, no process group): `smop-count`, `smop-plan`, the start-up placement
line, the benchmarks and the GRIFFIN evaluation all read the same table (shapes.py) and the same formulas.
"""
