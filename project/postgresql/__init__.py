"""PostgreSQL, as Django's backend, with health checks only for connections that sat idle
(see ``base.DatabaseWrapper``). ``ENGINE = "project.postgresql"``."""
