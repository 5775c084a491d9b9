"""Logger, Metrics and Tracer, created once for the whole process.

Every module imports these instead of creating its own, so one Lambda invocation (or one
runner process) writes one consistent stream of structured logs and EMF metrics."""

import warnings

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "aiadmin-onboarding"
NAMESPACE = "AIAdmin/Onboarding"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)

# Handlers that change nothing publish no metric; that is normal, not worth a warning per call.
warnings.filterwarnings("ignore", message="No application metrics to publish")
