"""The simulated rack: plant physics and the protocol front-ends that serve it as devices do."""
