"""Staged rollouts: a candidate answers in shadow, then for a sticky share of keys, then for everyone or no one.

``store``: the rollout tables; ``measures``: what is compared per answer (the seam online evaluation
plugs into); ``sequential``: the test that decides; ``service``: starting, promoting, aborting;
``routing``: the request path's part (canary side, enqueueing shadow questions); ``shadow``: the
worker that answers queued questions on the other side and applies the decisions.
"""
