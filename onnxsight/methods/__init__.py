"""Attribution methods: plain functions ``(model, x, target=..., **options) -> array``, one module each."""
