"""Choosing which cases to label: the query configuration, the strategies (ATTSQ and the
baselines), ranking a workspace's pool, and the frozen pretrained model's statistics cache.
"""
