import ArgumentParser
import ChatServer
@main struct X: ParsableCommand { func run() {} }
