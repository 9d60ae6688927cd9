"""Synthetic white cells from simulated labs, with true masks: the default dataset of ``make run``
and the test suite's data."""
