"""``task: classification``: labelled images or tabular data, classifier teachers and
students measured by accuracy, size and latency."""
