"""The search driver, in parts that need no Ray: the study as a driver knows it (state.py), claims among drivers
(claims.py), successive halving's rung table and promotions (promotions.py), suggestions and asking ahead
(suggestions.py, asking.py, drawers.py, samplers.py), and the driver itself (searcher.py); Ray Tune's thin adapter
on top (tune.py). Modules are imported where they are used, so that a drawing process loads no Ray."""
