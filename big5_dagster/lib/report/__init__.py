"""The run report: its sections and page, and the plots (also used for training loss curves)."""
