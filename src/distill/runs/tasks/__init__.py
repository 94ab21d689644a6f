"""One folder per kind of run: its data, models, metrics, report sections and what it
adds to the recipe. Only the task table (``runs.table``) names them."""
