"""Split strategies (MATH.md §4). Built-ins register through the split-strategy hook."""
