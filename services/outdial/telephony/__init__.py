"""Telephony adapters: the interface the dialer uses (:mod:`.base`) and the simulated carrier (:mod:`.sim`)."""
