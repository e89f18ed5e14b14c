-- Intarsia for Neovim (0.11+): starts `intarsia serve` with vim.lsp.config + vim.lsp.enable for the configured
-- filetypes, shows its inline completions as ghost text and accepts them (all, a line, a word), and generates a
-- function body from its docstring (:IntarsiaGenerate), and tells the server where the cursor is
-- (intarsia/didMoveCursor, lua/intarsia/cursor.lua) so that it can prepare the suggestion there.
--
-- Ghost text comes from Neovim's own vim.lsp.inline_completion where it exists (0.12+), otherwise from
-- lua/intarsia/ghost.lua (extmarks). Settings are the server's (the "intarsia" section: engine, model,
-- maxTokens, test = { table = ... }, ...), sent as initializationOptions, as the answer to the server's
-- workspace/configuration request and, after update_settings(), in workspace/didChangeConfiguration. They come
-- from setup() and update_settings() only: nothing is read from the project's files, and settings merged into
-- the client's config from elsewhere (vim.lsp.config('*'), lsp/intarsia.lua, plugins that import a project's
-- settings files) are replaced before the server sees them.

local api = vim.api
local ghost = require('intarsia.ghost')
local cursor_notify = require('intarsia.cursor')

local M = {}

M.defaults = {
  --- Name of the LSP config (vim.lsp.config) and of the client.
  name = 'intarsia',
  --- The server command.
  cmd = { 'intarsia', 'serve' },
  --- Extra environment of the server process (e.g. { INTARSIA_CACHE = '/tmp/intarsia' }).
  cmd_env = nil,
  --- The server's log (`--log-file` is added to cmd); false: the server logs to stderr, which Neovim copies
  --- into its lsp.log as errors.
  log_file = vim.fs.joinpath(vim.fn.stdpath('log'), 'intarsia.log'),
  --- Filetypes to start the server for; '*' for every file buffer.
  filetypes = {
    'python',
    'javascript',
    'javascriptreact',
    'typescript',
    'typescriptreact',
    'go',
    'rust',
    'java',
    'c',
    'cpp',
  },
  --- The workspace root is the nearest folder with one of these, else the current directory.
  root_markers = { '.git', 'pyproject.toml', 'setup.py', 'package.json', 'go.mod', 'Cargo.toml', 'pom.xml' },
  --- The server's settings (section "intarsia"), same names as in VS Code: engine, model, device, adapter,
  --- remoteEndpoint, maxTokens, debounceMs, multiline, promptBudgetTokens, contextBudgetTokens, languages, ...
  settings = {},
  --- Ask for suggestions while typing (false: only with keymaps.trigger or require('intarsia').request()).
  auto_trigger = true,
  --- Pause (ms) after the last keystroke before asking (extmark path; the server adds its own adaptive wait).
  debounce_ms = 75,
  --- Pause (ms) after the cursor last moved before telling the server where it is (intarsia/didMoveCursor), so
  --- that it can prepare the suggestion there; 0 disables.
  cursor_notify_ms = 120,
  --- Use vim.lsp.inline_completion (Neovim 0.12+): 'auto' where it exists, true, or false (extmarks).
  native = 'auto',
  --- Insert-mode keys (false or '' disables one). Without a suggestion, a key does what it does otherwise.
  keymaps = {
    accept = '<Tab>',
    accept_line = '<M-C-Right>',
    accept_word = '<M-Right>',
    dismiss = '<C-]>',
    trigger = '<M-\\>',
  },
  hl_group = 'IntarsiaSuggestion',
}

M.config = vim.deepcopy(M.defaults)

--- Whether the buffers use vim.lsp.inline_completion (decided in setup()).
M.native = false

local function notify(msg, level)
  vim.notify('Intarsia: ' .. msg, level or vim.log.levels.INFO)
end

local function has_native()
  local ic = vim.lsp.inline_completion
  return type(ic) == 'table' and type(ic.enable) == 'function' and type(ic.get) == 'function'
end

local function as_object(t)
  if type(t) == 'table' and next(t) == nil then
    return vim.empty_dict()
  end
  return t
end

--- `settings` as JSON objects where the server expects objects (an empty Lua table would be sent as []).
local function server_settings(settings)
  local s = vim.deepcopy(settings or {})
  if type(s.test) == 'table' then
    s.test = as_object(s.test)
    if type(s.test.table) == 'table' then
      s.test.table = as_object(s.test.table)
    end
  end
  return as_object(s)
end

--- The Intarsia client attached to `bufnr` (default: current buffer), or nil.
function M.client(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  return vim.lsp.get_clients({ bufnr = bufnr, name = M.config.name })[1]
end

--- Answer to the server's workspace/configuration request: the "intarsia" section from `cfg` (setup() and
--- update_settings()), never the client's merged settings.
local function configuration_handler(cfg)
  return function(_, params)
    local section = server_settings(cfg.settings)
    local out = {}
    for i, item in ipairs(type(params) == 'table' and params.items or {}) do
      if item.section == 'intarsia' then
        out[i] = section
      elseif item.section == nil or item.section == '' then
        out[i] = { intarsia = section }
      else
        out[i] = vim.NIL
      end
    end
    return out
  end
end

--- before_init: the initialize request and the settings Neovim sends right after it
--- (workspace/didChangeConfiguration with client.settings, which is `config.settings`) hold `cfg`'s only.
local function pin_settings(cfg)
  return function(params, config)
    local section = server_settings(cfg.settings)
    params.initializationOptions = { intarsia = section }
    if type(config.settings) == 'table' then
      for k in pairs(config.settings) do
        config.settings[k] = nil
      end
      config.settings.intarsia = section
    end
  end
end

local function lsp_config(cfg)
  local section = server_settings(cfg.settings)
  local cmd = vim.deepcopy(cfg.cmd)
  if type(cfg.log_file) == 'string' and cfg.log_file ~= '' then
    vim.fn.mkdir(vim.fs.dirname(cfg.log_file), 'p')
    vim.list_extend(cmd, { '--log-file', cfg.log_file })
  end
  return {
    cmd = cmd,
    cmd_env = cfg.cmd_env,
    filetypes = cfg.filetypes ~= '*' and cfg.filetypes or nil,
    root_dir = function(bufnr, on_dir)
      on_dir(vim.fs.root(bufnr, cfg.root_markers) or vim.fn.getcwd())
    end,
    init_options = { intarsia = section },
    settings = { intarsia = section },
    before_init = pin_settings(cfg),
    handlers = { ['workspace/configuration'] = configuration_handler(cfg) },
  }
end

-- ---------------------------------------------------------------------------------------------- accepting

local function cursor()
  local pos = api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

local function exec(client, bufnr, command)
  client:exec_cmd(command, { bufnr = bufnr }, function(err)
    if err then
      notify(command.command .. ' failed: ' .. tostring(err.message), vim.log.levels.WARN)
    end
  end)
end

--- Partial accept of an item of vim.lsp.inline_completion (its on_accept): insert the next line or word at
--- the cursor and report it with intarsia.acceptPartial (all of it: intarsia.accept).
local function native_partial(item, kind)
  local text = item.insert_text
  if type(text) ~= 'string' then
    return
  end
  local bufnr = api.nvim_get_current_buf()
  local row, col = cursor()
  local typed = ''
  -- The item may start before the cursor (characters typed since it was shown).
  local ok, srow, scol = pcall(function()
    return item.range.start.row, item.range.start.col
  end)
  if ok and srow == row and type(scol) == 'number' and scol <= col then
    typed = (api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''):sub(scol + 1, col)
    if text:sub(1, #typed) ~= typed then
      return
    end
    text = text:sub(#typed + 1)
  end
  local part = kind == 'word' and ghost.next_word(text) or ghost.next_line(text)
  local lines = vim.split(part, '\n', { plain = true })
  for i, l in ipairs(lines) do
    lines[i] = l:gsub('\r$', '')
  end
  api.nvim_buf_set_text(bufnr, row, col, row, col, lines)
  api.nvim_win_set_cursor(0, { row + #lines, (#lines == 1 and col or 0) + #lines[#lines] })
  local client = vim.lsp.get_client_by_id(item.client_id)
  local command = item.command
  if not client or type(command) ~= 'table' then
    return
  end
  if #part >= #text then
    exec(client, bufnr, command)
    return
  end
  local args = command.arguments
  local id = type(args) == 'table' and type(args[1]) == 'table' and args[1].id or nil
  if id then
    exec(client, bufnr, {
      title = 'Intarsia: suggestion partly accepted',
      command = 'intarsia.acceptPartial',
      arguments = { { id = id, acceptedLength = vim.fn.strchars(typed) + vim.fn.strchars(part) } },
    })
  end
end

--- Accept the suggestion at the cursor: kind 'all' (default), 'line' or 'word'. False when there is none.
function M.accept(kind)
  kind = kind or 'all'
  if M.native then
    local ic = vim.lsp.inline_completion
    if kind == 'all' then
      return ic.get() == true
    end
    return ic.get({
      on_accept = function(item)
        native_partial(item, kind)
      end,
    }) == true
  end
  return ghost.accept(kind)
end

--- Remove the suggestion shown in the current buffer (extmark path). False when there was none.
function M.dismiss()
  local bufnr = api.nvim_get_current_buf()
  if ghost.current(bufnr) == nil then
    return false
  end
  ghost.reset(bufnr)
  return true
end

--- Ask for a suggestion at the cursor now (extmark path).
function M.request()
  if M.native then
    return false
  end
  return ghost.request(0, true)
end

--- The suggestion shown in the current buffer (extmark path): {text, row, col, id}, or nil.
function M.suggestion(bufnr)
  return ghost.current(bufnr)
end

local function set_keymaps(bufnr)
  local km = M.config.keymaps or {}
  local function map(lhs, fn, desc)
    if type(lhs) ~= 'string' or lhs == '' then
      return
    end
    vim.keymap.set('i', lhs, function()
      if not fn() then
        api.nvim_feedkeys(vim.keycode(lhs), 'in', false)
      end
    end, { buffer = bufnr, silent = true, desc = desc })
  end
  map(km.accept, function()
    return M.accept('all')
  end, 'Intarsia: accept the suggestion')
  map(km.accept_line, function()
    return M.accept('line')
  end, 'Intarsia: accept the next line of the suggestion')
  map(km.accept_word, function()
    return M.accept('word')
  end, 'Intarsia: accept the next word of the suggestion')
  if not M.native then
    map(km.dismiss, M.dismiss, 'Intarsia: dismiss the suggestion')
    map(km.trigger, M.request, 'Intarsia: suggest now')
  end
end

local function del_keymaps(bufnr)
  for _, lhs in pairs(M.config.keymaps or {}) do
    if type(lhs) == 'string' and lhs ~= '' then
      pcall(vim.keymap.del, 'i', lhs, { buffer = bufnr })
    end
  end
end

local function on_attach(client, bufnr)
  if M.native then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  else
    ghost.attach(bufnr)
  end
  cursor_notify.attach(bufnr)
  set_keymaps(bufnr)
end

-- ---------------------------------------------------------------------------------------------- commands

--- Generate the body of the function at the cursor from its docstring (intarsia.generateFunction); the
--- server applies it with workspace/applyEdit. `callback(err, result)` is optional.
function M.generate_function(callback)
  local bufnr = api.nvim_get_current_buf()
  local client = M.client(bufnr)
  if not client then
    notify('no Intarsia server is attached to this buffer', vim.log.levels.WARN)
    if callback then
      callback({ message = 'not attached' }, nil)
    end
    return
  end
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  client:exec_cmd({
    title = 'Intarsia: generate function',
    command = 'intarsia.generateFunction',
    arguments = { { uri = params.textDocument.uri, position = params.position } },
  }, { bufnr = bufnr }, function(err, result)
    if err then
      notify('generating the function failed: ' .. tostring(err.message), vim.log.levels.ERROR)
    elseif type(result) == 'table' and result.applied then
      -- With docstring examples checked the server says which passed (window/showMessage): one notice, not two.
      if type(result.verification) ~= 'table' then
        notify('generated the body of ' .. tostring(result['function']))
      end
    else
      local why = type(result) == 'table' and result.reason or 'no answer'
      notify('no function body: ' .. tostring(why), vim.log.levels.WARN)
    end
    if callback then
      callback(err, result)
    end
  end)
end

--- The server's status (intarsia.status) for the current buffer: callback(err, status).
function M.status(callback)
  local bufnr = api.nvim_get_current_buf()
  local client = M.client(bufnr)
  if not client then
    callback({ message = 'no Intarsia server is attached to this buffer' }, nil)
    return
  end
  client:exec_cmd({
    title = 'Intarsia: status',
    command = 'intarsia.status',
    arguments = { { uri = vim.uri_from_bufnr(bufnr) } },
  }, { bufnr = bufnr }, callback)
end

--- :IntarsiaStatus
function M.show_status()
  M.status(function(err, st)
    if err then
      notify(tostring(err.message), vim.log.levels.WARN)
      return
    end
    local acc = st.acceptance or {}
    notify(
      ('%s, %s%s; %s; accepted %s, partly %s; ghost text: %s'):format(
        tostring(st.state),
        tostring(st.model or st.engine),
        st.error ~= vim.NIL and st.error and (' (' .. tostring(st.error) .. ')') or '',
        st.encoding and ('positions in ' .. st.encoding) or '',
        tostring(acc.accepted or 0),
        tostring(acc.partial or 0),
        M.native and 'vim.lsp.inline_completion' or 'extmarks'
      )
    )
  end)
end

--- :IntarsiaReload: load the model again (intarsia.reloadModel).
function M.reload()
  local bufnr = api.nvim_get_current_buf()
  local client = M.client(bufnr)
  if not client then
    notify('no Intarsia server is attached to this buffer', vim.log.levels.WARN)
    return
  end
  exec(client, bufnr, { title = 'Intarsia: reload', command = 'intarsia.reloadModel', arguments = {} })
end

--- :IntarsiaToggle: automatic suggestions on/off (everywhere).
function M.toggle()
  local on = vim.g.intarsia_enabled == false
  vim.g.intarsia_enabled = on
  if M.native then
    vim.lsp.inline_completion.enable(on)
  elseif not on then
    for _, c in ipairs(vim.lsp.get_clients({ name = M.config.name })) do
      for b in pairs(c.attached_buffers) do
        ghost.reset(b)
      end
    end
  end
  notify('automatic suggestions ' .. (on and 'on' or 'off'))
end

--- Merge `settings` into the server settings and send them to the running servers
--- (workspace/didChangeConfiguration); later servers start with them.
function M.update_settings(settings)
  M.config.settings = vim.tbl_deep_extend('force', M.config.settings or {}, settings or {})
  local section = server_settings(M.config.settings)
  if vim.lsp.config then
    vim.lsp.config(M.config.name, { init_options = { intarsia = section }, settings = { intarsia = section } })
  end
  for _, c in ipairs(vim.lsp.get_clients({ name = M.config.name })) do
    c.settings = { intarsia = section }
    c:notify('workspace/didChangeConfiguration', { settings = { intarsia = section } })
  end
end

--- setup()'s cursor_notify_ms as the pause of lua/intarsia/cursor.lua: whole milliseconds, 0 (off) for 0 or less,
--- the default for anything but a number.
local function cursor_notify_ms(value)
  local ms = tonumber(value)
  if ms == nil or ms ~= ms or ms == math.huge then
    return M.defaults.cursor_notify_ms
  end
  return math.max(0, math.floor(ms))
end

-- For the unit tests (test/unit.lua).
M._cursor_notify_ms = cursor_notify_ms
M._server_settings = server_settings
M._native_partial = native_partial
M._lsp_config = lsp_config

-- ---------------------------------------------------------------------------------------------- setup

function M.setup(opts)
  if vim.fn.has('nvim-0.11') == 0 then
    notify('needs Neovim 0.11 or later', vim.log.levels.ERROR)
    return
  end
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  local cfg = M.config
  if cfg.native == true and not has_native() then
    notify('vim.lsp.inline_completion needs Neovim 0.12; using extmarks', vim.log.levels.WARN)
  end
  -- Native inline completion always triggers automatically: without auto_trigger, use the extmark path.
  M.native = cfg.native ~= false and cfg.auto_trigger ~= false and has_native()
  ghost.config.client_name = cfg.name
  ghost.config.debounce_ms = cfg.debounce_ms
  ghost.config.auto_trigger = cfg.auto_trigger
  ghost.config.hl_group = cfg.hl_group
  cursor_notify.config.client_name = cfg.name
  cursor_notify.config.delay_ms = cursor_notify_ms(cfg.cursor_notify_ms)
  if cursor_notify.config.delay_ms == 0 then
    cursor_notify.cancel()
  end

  local group = api.nvim_create_augroup('intarsia', { clear = true })
  api.nvim_create_autocmd('LspAttach', {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == cfg.name then
        on_attach(client, args.buf)
      end
    end,
  })
  api.nvim_create_autocmd('LspDetach', {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == cfg.name then
        del_keymaps(args.buf)
        ghost.unattach(args.buf)
        cursor_notify.detach(args.buf)
        cursor_notify.forget(client.id)
      end
    end,
  })
  vim.lsp.config(cfg.name, lsp_config(cfg))
  vim.lsp.enable(cfg.name)
end

return M
