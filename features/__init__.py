"""Feature store (Feast repository, online readers) and the BSE signature store.

Submodules are imported lazily by their users: Feast is heavy to import and the BSE path
(features.bse) does not need it.
"""
