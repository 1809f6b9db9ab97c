from ..hub_cache import hub_state, offline_hub  # noqa: F401  (fixtures)
