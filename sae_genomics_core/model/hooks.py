"""The hook points of a tahoe-x1 block whose activations can be stored (no torch import: settings and
the Dagster definitions read it)."""

HOOKS = ("mlp_out", "resid_post", "attn_out", "mlp_hidden")
