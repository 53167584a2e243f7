"""Protocol adapters: Modbus TCP, Redfish, MQTT. They only talk protocols; they decide nothing."""
