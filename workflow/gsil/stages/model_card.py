"""`gsil model-card`: a trained model's card with its scores (gsil.modelcard), written outside the model folder."""

from gsil.modelcard import add_arguments, run  # noqa: F401
