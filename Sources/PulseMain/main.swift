// The `pulse` executable: a thin main over the `Pulse` library (Service/Entry.swift)
// and its tools (`PulseTools`: watch, members, backup, restore).
import Pulse
import PulseTools

PulseEntry.main(tools: PulseTools.all)
