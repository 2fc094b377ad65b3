"""The Observation Execution Tool (OET) as a Tango device server."""

__version__ = "0.1.0"
