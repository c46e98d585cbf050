"""Request handlers by topic; each module registers its routes (``routes.route``)."""
