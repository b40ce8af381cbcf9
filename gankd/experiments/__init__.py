"""Experiments: the Table-1 sweep and its report."""
