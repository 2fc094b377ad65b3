"""The Tango interface of the OET: the ObservationExecutionTool device and its server."""
