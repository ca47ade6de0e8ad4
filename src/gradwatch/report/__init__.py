"""Gradient dashboards: the offline HTML report (``gradwatch report``) and the W&B workspace (``gradwatch dashboard``).

Nothing here imports torch or Lightning: reports and dashboards read what runs wrote.
"""
