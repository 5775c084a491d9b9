"""The local stack: everything of the service on one machine, without AWS, YClients or WhatsApp."""
