"""Host-side stages: trace, cut, split, convert, bundle. Needs torch (pip install edgerun[export])."""
