"""What launches jobs and tells trackers about a sweep, above the run tools (``runs/`` reads run
folders and nothing else):

    finish.py  the sweep's reports (summary, comparison, effects) and its MLflow parent run, when a
               sweep or a look of ``runs extend`` ends
    extend.py  ``runs extend``: more seeds at planned looks, through the sweep's own launcher
    rerun.py   ``runs rerun``: a run trained again with changed overrides
    cli.py     the ``python -m densenet_exp.runs`` command line
"""

from .finish import finish_sweep

__all__ = ["finish_sweep"]
