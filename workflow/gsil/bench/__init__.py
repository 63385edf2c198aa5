"""Speed benchmarks of the suite against its peers (`gsil bench ...`); they print figures and are not run by tests."""
