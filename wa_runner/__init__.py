"""The WhatsApp runner: a long-running process that owns salons' WhatsApp sessions."""
