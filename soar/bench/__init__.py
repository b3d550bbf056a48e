"""The benchmarks of `soar bench` (`make bench`): each measurement printed beside a baseline
measured in the same run.

May import: nothing of soar
"""
