// Starts `cnnc lsp` (over stdio) for .cnn files; the command is the `cnnc.command` setting.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const [command, ...args] = vscode.workspace.getConfiguration("cnnc").get("command", ["cnnc", "lsp"]);
  client = new LanguageClient(
    "cnnc",
    "cnnc language server",
    { command, args },
    { documentSelector: [{ scheme: "file", language: "cnn" }, { scheme: "untitled", language: "cnn" }] },
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
