"""``distill search``: a study of students on top of the driver (``run``), its search
space and budgets (``space``), the Optuna study (``study``) and its report (``report``)."""
