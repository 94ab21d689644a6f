"""A run's report: the results table (``tables``), the page style (``page``), readable
axes (``ticks``) and ``report.md`` / ``report.html`` with their figures (``document``)."""
