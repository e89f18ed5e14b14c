-- Intarsia: user commands and the highlight of the ghost text. The server starts after
-- require('intarsia').setup{...} (see README.md).
if vim.g.loaded_intarsia then
  return
end
vim.g.loaded_intarsia = true

local function set_hl()
  vim.api.nvim_set_hl(0, 'IntarsiaSuggestion', { link = 'Comment', default = true })
end
set_hl()
vim.api.nvim_create_autocmd('ColorScheme', {
  group = vim.api.nvim_create_augroup('intarsia.highlight', { clear = true }),
  callback = set_hl,
})

local function cmd(name, fn, desc)
  vim.api.nvim_create_user_command(name, function()
    require('intarsia')[fn]()
  end, { desc = desc })
end

cmd('IntarsiaGenerate', 'generate_function', 'Intarsia: generate the function body at the cursor from its docstring')
cmd('IntarsiaStatus', 'show_status', 'Intarsia: show the server status')
cmd('IntarsiaReload', 'reload', 'Intarsia: load the model again')
cmd('IntarsiaToggle', 'toggle', 'Intarsia: automatic suggestions on/off')
