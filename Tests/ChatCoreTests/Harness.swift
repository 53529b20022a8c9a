import ChatCore
import ChatCoreTesting
import ChatJSON

/// The core tests run on the testing library users get (`ChatCoreTesting`): a broker on the in-memory store.
typealias Harness = ChatTestBroker

extension Result where Success == JSONValue, Failure == ChatError {
    var value: JSONValue? { if case .success(let v) = self { v } else { nil } }
    var error: ChatError? { if case .failure(let e) = self { e } else { nil } }
}
