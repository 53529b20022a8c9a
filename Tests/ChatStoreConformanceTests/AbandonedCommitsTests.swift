import ChatCore
@testable import ChatStorePostgres
import Testing

/// Of this node's own announcements, only what an abandoned commit wrote passes (its successor actor may not have
/// it): its messages, and its member changes by their members version, not every later member change of the thread.
struct AbandonedCommitsTests {
    @Test func onlyTheAbandonedCommitsOwnMemberChangesPass() {
        let abandoned = AbandonedCommits()
        abandoned.note([.addMembers("t", ["x"], membersVersion: 7)])
        func change(added: [UserID] = [], removed: [UserID] = [], version: Int64?, created: Bool = false) -> ClusterChange {
            .membership("t", company: "c", asOf: 3, created: created, added: added, removed: removed, membersVersion: version)
        }
        let own = [change(added: ["x"], version: 7), change(removed: ["x"], version: 8), change(added: ["y"], version: 9)]
        let passed = abandoned.ownChangesToApply(own)
        // The live actor removed x (version 8) after the abandoned addition: that removal's own announcement arriving
        // late must not be applied again here, and neither must a later addition of y.
        #expect(passed.count == 1)
        if case .membership(_, _, _, _, let added, _, let version)? = passed.first {
            #expect(added == ["x"] && version == 7)
        }
        #expect(abandoned.ownChangesToApply([change(added: ["x"], version: 0, created: true)]).isEmpty, "the thread's creation was not abandoned")
        #expect(abandoned.ownChangesToApply([.membership("u", company: "c", asOf: 0, created: false, added: ["x"], removed: [], membersVersion: 7)]).isEmpty)
    }

    @Test func anAbandonedCreationPassesAsACreation() {
        let abandoned = AbandonedCommits()
        let info = ThreadInfo(id: "t", companyId: "c", name: nil, kind: .group, createdBy: "a", createdAt: .now())
        abandoned.note([.createThread(info, members: ["a", "b"])])
        let creation = ClusterChange.membership("t", company: "c", asOf: 0, created: true, added: ["a", "b"], removed: [], membersVersion: 0)
        #expect(abandoned.ownChangesToApply([creation]).count == 1)
        let later = ClusterChange.membership("t", company: "c", asOf: 1, created: false, added: ["z"], removed: [], membersVersion: 5)
        #expect(abandoned.ownChangesToApply([later]).isEmpty)
    }
}
