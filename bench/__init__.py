"""`make bench`: pg-sfs-agent's start-up costs against PostgreSQL's own commands (never part of the tests)."""
