// A test imports `ChatCoreTesting` alone and gets the core's types (Supervisor, Principal, JSONValue, …) with it.
@_exported import ChatCore
@_exported import ChatJSON
