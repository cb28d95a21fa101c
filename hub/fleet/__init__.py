"""The fleet over MQTT: the hub's client (state, commands, chunked bundle transfer,
drift intake) and the brokers the hub can start (embedded amqtt, private Mosquitto)."""

from edgeloop.hub.fleet.brokers import BrokerAddress, EmbeddedBroker, MosquittoBroker, free_port, wait_for_port
from edgeloop.hub.fleet.client import Fleet
from edgeloop.hub.fleet.core import FleetOptions

__all__ = ["BrokerAddress", "EmbeddedBroker", "Fleet", "FleetOptions", "MosquittoBroker", "free_port",
           "wait_for_port"]
