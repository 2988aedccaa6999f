// The `pulse` executable: a thin main over the `Pulse` library (Service/Entry.swift).
import Pulse

PulseEntry.main()
